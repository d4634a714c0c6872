# Tables, figures and the HTML report (`snakemake --report`). Every table and figure is flagged
# with report() and an RST caption from workflow/report/; the run-time benchmarks are flagged as
# inputs of rule all when the report is built (report_benchmarks()); a successful default run
# ends with build_report() (the Snakefile's onsuccess), so a finished run has results/report.html.


include: "report_common.smk"


report: "../report/workflow.rst"


rule tables:
    input:
        PLAN.run_csvs(),
    output:
        report_tables(PLAN.table_files()),
    params:
        settings=PLAN.table_settings(),
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{R}/logs/tables.log",
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench tables --runs {input} --settings {params.settings:q} --out-dir {params.out}"
        " 2> {log}"


rule figures:
    input:
        runs=PLAN.run_csvs(),
        trajectories=PLAN.trajectory_csvs(),
        xrays=PLAN.xray_indexes(),
        optimizers=PLAN.optimizer_studies(),
    output:
        report_figures(),
    params:
        settings=PLAN.settings("methods", "evaluation", "render"),
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench figures --runs {input.runs} --optimizer-studies {input.optimizers}"
        " --settings {params.settings:q}"
        " --out-dir {params.out} 2> {log}"
