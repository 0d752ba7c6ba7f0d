"""CoOp (Zhou et al., IJCV 2022): learnable text context, cross-entropy on hard labels."""
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from dassl.metrics import compute_accuracy

from .base import PromptTrainer, freeze_all_but_prompts
from .prompt_learners import PromptLearner
from .prompted_clip import PromptedCLIP


def build_coop_model(trainer, node):
    """CoOp's model from `cfg.TRAINER.<node>` (N_CTX, CTX_INIT, CSC, CLASS_TOKEN_POSITION); only the context trains."""
    clip_model = trainer.load_clip_model()
    prompt_learner = PromptLearner(
        clip_model, trainer.dm.dataset.classnames, n_ctx=None if node.CTX_INIT else node.N_CTX,
        ctx_init=node.CTX_INIT, csc=node.CSC, class_token_position=node.CLASS_TOKEN_POSITION,
    )
    model = PromptedCLIP(clip_model, prompt_learner, trainer.cfg.MODEL.TEXT_TRUNCATION)
    return freeze_all_but_prompts(model).to(trainer.device)


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    CONFIG_NODE = "COOP"

    def build_model(self):
        self.model = build_coop_model(self, self.method_cfg)
        self.register_trainable("prompt_learner", self.model.prompt_learner)
        self.build_grad_scaler()

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            output = self.model(image)
            loss = F.cross_entropy(output, label)
        self.backward_and_update(loss)
        self.end_of_epoch_step()
        return {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}
