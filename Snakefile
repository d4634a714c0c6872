# regbench: X-ray-to-CT rigid registration benchmark, raw data -> tables and figures.
# Run `snakemake --cores all` (embedded default) or see README.md for clusters and datasets.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/register.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/generalization.smk"
include: "workflow/rules/backbones.smk"


rule all:
    input:
        PLAN.final_outputs(),
        report_benchmarks(),
    default_target: True


onsuccess:
    build_report()
