"""`--templates` for teacher class features: literal templates with "{}" and named sets.

The sets are the project's template data (`trainers/templates.py`); several templates are
ensembled (mean of normalised text features, renormalised), as in CLIP's ImageNet evaluation.
Without any, the teacher reads the dataset's CoOp template, as the official FDBPL and PromptKD
code do (e.g. "a photo of a {}, a type of pet." for OxfordPets).
"""
from trainers.templates import CLIP_IMAGENET_TEMPLATES, CLIP_SELECTED_TEMPLATES, PROMPTSRC_TEMPLATES, dataset_template

TEMPLATE_SETS = {"imagenet80": CLIP_IMAGENET_TEMPLATES, "imagenet7": CLIP_SELECTED_TEMPLATES, "promptsrc60": PROMPTSRC_TEMPLATES}
DEFAULT_HELP = "the dataset's CoOp template, e.g. \"a photo of a {}, a type of pet.\" for OxfordPets"


def resolve_templates(items, dataset_name):
    """Expand set names and validate literals: a tuple of templates, each with exactly one "{}".

    No `items` gives the CoOp template of `dataset_name` (DATASET.NAME; "a photo of a {}." for a
    dataset CoOp does not know).
    """
    templates = []
    for item in items or (dataset_template(dataset_name),):
        if item in TEMPLATE_SETS:
            templates.extend(TEMPLATE_SETS[item])
        elif item.count("{}") == 1:
            templates.append(item)
        else:
            raise ValueError(
                f"template {item!r} is neither a set name ({', '.join(TEMPLATE_SETS)}) nor a string "
                'with exactly one "{}" where the class name goes (e.g. "a photo of a {}.")'
            )
    return tuple(templates)
