# slidemil: whole-slide images -> tissue masks -> tiles -> graphs -> features -> MIL -> benchmark.
# A table of contents only: helpers live in workflow/rules/common.smk, logic in src/slidemil.
import os

from snakemake.utils import min_version

min_version("9.0")


# The demo's config/config.yaml, found from the workflow (so `--directory elsewhere` works), and only
# when no --configfile is given: Snakemake would merge the demo's encoders, pretraining and MIL runs
# into a cohort's config. A --configfile is complete by itself (keys it omits take slidemil.config's
# defaults); an overlay on the demo names it first: --configfile config/config.yaml config/zoo.yaml.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")



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


# Every run ends with the cohort's summary: slides ok / empty / failed, the first reasons, the QC table.
onsuccess:
    print_run_summary(config["samples"], QC_TABLE, config["max_failed_fraction"], config["on_slide_error"])


onerror:
    print_run_summary(config["samples"], QC_TABLE, config["max_failed_fraction"], config["on_slide_error"])


rule all:
    input:
        all_outputs(),
        hnm_outputs(),
    default_target: True
