"""`--templates` for teacher class features: literal templates with "{}" and named sets.

The sets are the project's template data (`trainers/templates.py`); several templates are
ensembled (mean of normalised text features, renormalised), as in CLIP's ImageNet evaluation.
Without any, the teacher reads the dataset's CoOp template, as the official FDBPL and PromptKD
code do (e.g. "a photo of a {}, a type of pet." for OxfordPets). In an ensemble, a teacher may have
its own templates (`--teacher-templates N=ITEM`); a table then records one list per teacher.
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


def teacher_templates(shared, own, num_teachers, dataset_name):
    """The recorded templates of a table: one resolved tuple shared by all teachers, or (when `own`, pairs
    (1-based teacher position, item), gives some teacher its own) a tuple of tuples, one per teacher."""
    positions = sorted({position for position, _ in own})
    outside = [position for position in positions if not 1 <= position <= num_teachers]
    if outside:
        raise ValueError(f"--teacher-templates names teacher {outside[0]}, but there are {num_teachers} --teacher "
                         f"(numbered 1 .. {num_teachers} in their order)")
    common = resolve_templates(shared, dataset_name)
    if not positions:
        return common
    return tuple(resolve_templates([item for position, item in own if position == number], dataset_name)
                 if number in positions else common for number in range(1, num_teachers + 1))


def templates_of_teacher(templates, position):
    """Teacher `position`'s (0-based) templates from recorded ones (shared strings, or one list per teacher)."""
    if templates and not isinstance(templates[0], str):
        return tuple(templates[position])
    return tuple(templates)
