# slidemil: whole-slide images -> tissue masks -> tiles -> graphs -> features -> MIL -> benchmark.
# A table of contents only: helpers live in workflow/rules/common.smk, logic in src/slidemil.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/indexes.smk"
include: "workflow/rules/mil.smk"
include: "workflow/rules/hnm.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        all_outputs(),
        hnm_outputs(),
    default_target: True
