rule register:
    input:
        ct=rules.prepare.output.ct,
        landmarks=rules.prepare.output.landmarks,
        geometry=rules.prepare.output.geometry,
        xrays=rules.simulate.output.xrays,
        index=rules.simulate.output.index,
        regressor=rules.train_regressor.output.model,
        model=method_model,
    output:
        runs=PLAN.pattern("runs"),
        trajectory=PLAN.pattern("trajectory"),
        snapshot=PLAN.pattern("run_snapshot"),
    params:
        settings=register_settings,
        prepared=lambda w, input: os.path.dirname(input.ct),
        xrays=lambda w, input: os.path.dirname(input.xrays),
        model=lambda w, input: PLAN.model_option(w.method, input.model),
    threads: 1
    log:
        f"{R}/logs/register/{{dataset}}/{{subject}}/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/register/{{dataset}}/{{subject}}/{{method}}.tsv"
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=PLAN.gpu,
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench register --method {wildcards.method} --prepared {params.prepared}"
        " --xrays {params.xrays} --regressor {input.regressor} {params.model}"
        " --settings {params.settings:q}"
        " --out {output.runs} --trajectory {output.trajectory} --threads {threads} 2> {log}"


rule optimizer_study:
    input:
        ct=rules.prepare.output.ct,
        xrays=rules.simulate.output.xrays,
        index=rules.simulate.output.index,
        regressor=rules.train_regressor.output.model,
        similarity=PLAN.optimizer_study_similarity(),
    output:
        PLAN.pattern("optimizer_study"),
    params:
        settings=subject_settings(
            "prior", "render", "regressor", "geometry", "augment", "similarity", "lm",
            "optimizer_study",
        ),
        prepared=lambda w, input: os.path.dirname(input.ct),
        xrays=lambda w, input: os.path.dirname(input.xrays),
    threads: 1
    log:
        f"{R}/logs/optimizer_study/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{R}/benchmarks/optimizer_study/{{dataset}}/{{subject}}.tsv"
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench optimizer-study --prepared {params.prepared} --xrays {params.xrays}"
        " --regressor {input.regressor} --similarity {input.similarity}"
        " --settings {params.settings:q} --out {output} --threads {threads} 2> {log}"
