rule train_regressor:
    input:
        **rules.prepare.output,
        checked=data_check,
    output:
        model=PLAN.pattern("regressor"),
        log_csv=PLAN.pattern("regressor_log"),
        snapshot=PLAN.pattern("regressor_snapshot"),
    # Every registration waits for it: start it before the similarity models.
    priority: 20  # above two priority-5 trainings: snakemake weighs the sum of a batch
    params:
        settings=subject_settings("prior", "render", "regressor", "geometry", "augment"),
        prepared=lambda w, input: os.path.dirname(input.ct),
    # One thread, as every job here: two threads train 1.5x faster but cost 1.3x the
    # core-seconds, and a two-thread job leaves a core idle until both are free (the
    # cluster profile sets more).
    threads: 1
    log:
        f"{R}/logs/train_regressor/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{R}/benchmarks/train_regressor/{{dataset}}/{{subject}}.tsv"
    resources:
        mem_mb=6000,
        runtime=240,
        gpu=PLAN.gpu,
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench train-regressor --dataset {wildcards.dataset} --subject {wildcards.subject}"
        " --prepared {params.prepared} --settings {params.settings:q}"
        " --out {output.model} --log-csv {output.log_csv} --threads {threads} 2> {log}"


rule train_similarity:
    input:
        **rules.prepare.output,
        regressor=rules.train_regressor.output.model,
        checked=data_check,
    output:
        model=PLAN.pattern("similarity"),
        log_csv=PLAN.pattern("similarity_log"),
        snapshot=PLAN.pattern("similarity_snapshot"),
    params:
        settings=lambda w: PLAN.similarity_train_settings(w.dataset, w.subject, w.method),
        prepared=lambda w, input: os.path.dirname(input.ct),
    threads: 1
    log:
        f"{R}/logs/train_similarity/{{dataset}}/{{subject}}/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/train_similarity/{{dataset}}/{{subject}}/{{method}}.tsv"
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=PLAN.gpu,
    conda:
        "../../envs/regbench.yaml"
    priority: 5  # every similarity trained before the registrations queue behind them
    shell:
        "python -m regbench train-similarity --dataset {wildcards.dataset}"
        " --subject {wildcards.subject} --variant {wildcards.method}"
        " --prepared {params.prepared} --regressor {input.regressor} --settings {params.settings:q}"
        " --out {output.model} --log-csv {output.log_csv} --threads {threads} 2> {log}"


# Methods that learn a model of their own (regbench.methods.OWN_MODELS: landmark heatmaps,
# scene coordinates), trained on the subject's DRRs.
rule train_method:
    input:
        **rules.prepare.output,
        checked=data_check,
    output:
        model=PLAN.pattern("method_model"),
        log_csv=PLAN.pattern("method_model_log"),
        snapshot=PLAN.pattern("method_model_snapshot"),
    params:
        settings=lambda w: PLAN.train_method_settings(w.dataset, w.subject, w.method),
        prepared=lambda w, input: os.path.dirname(input.ct),
    wildcard_constraints:
        method=alternatives(sorted(OWN_MODELS)),
    threads: 1
    log:
        f"{R}/logs/train_method/{{dataset}}/{{subject}}/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/train_method/{{dataset}}/{{subject}}/{{method}}.tsv"
    resources:
        mem_mb=6000,
        runtime=240,
        gpu=PLAN.gpu,
    conda:
        "../../envs/regbench.yaml"
    priority: 5  # like the similarity trainings: before the registrations queue behind them
    shell:
        "python -m regbench train-method --method {wildcards.method} --dataset {wildcards.dataset}"
        " --subject {wildcards.subject} --prepared {params.prepared} --settings {params.settings:q}"
        " --out {output.model} --log-csv {output.log_csv} --threads {threads} 2> {log}"
