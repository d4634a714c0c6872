# The paper's Figure 4 (left): pose regressors with several timm backbones trained on the first
# patient-specific subject until their loss settles (backbone_study in the config), compared by
# training time and PoseNet mTRE on that subject's test X-rays. Included after report.smk.


rule backbone_study:
    input:
        **rules.prepare.output,
        xrays=rules.simulate.output.xrays,
        index=rules.simulate.output.index,
        checked=data_check,
    output:
        PLAN.pattern("backbone_study"),
    params:
        settings=subject_settings(
            "prior", "render", "regressor", "geometry", "augment", "backbone_study"
        ),
        prepared=lambda w, input: os.path.dirname(input.ct),
        xrays=lambda w, input: os.path.dirname(input.xrays),
    threads: 1
    log:
        f"{R}/logs/backbone_study/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{R}/benchmarks/backbone_study/{{dataset}}/{{subject}}.tsv"
    resources:
        mem_mb=6000,
        runtime=480,
        gpu=PLAN.gpu,
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench backbone-study --dataset {wildcards.dataset} --subject {wildcards.subject}"
        " --prepared {params.prepared} --xrays {params.xrays} --settings {params.settings:q}"
        " --out {output} --threads {threads} 2> {log}"


rule backbone_figure:
    input:
        PLAN.backbone_studies(),
    output:
        report_backbones(),
    params:
        settings=PLAN.settings(),
        figure_dir=lambda w, output: os.path.dirname(output[0]),
        table_dir=lambda w, output: os.path.dirname(output[-1]),
    log:
        f"{R}/logs/backbone_figure.log",
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench backbone-figure --studies {input} --settings {params.settings:q}"
        " --figure-dir {params.figure_dir} --table-dir {params.table_dir} 2> {log}"
