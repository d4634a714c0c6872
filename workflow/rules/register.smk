rule register:
    input:
        ct=rules.prepare.output.ct,
        landmarks=rules.prepare.output.landmarks,
        geometry=rules.prepare.output.geometry,
        xrays=rules.simulate.output.xrays,
        index=rules.simulate.output.index,
        regressor=rules.train_regressor.output.model,
    output:
        runs=f"{R}/{{dataset}}/{{subject}}/runs/{{method}}.csv",
        trajectory=f"{R}/{{dataset}}/{{subject}}/runs/{{method}}.trajectory.csv",
        snapshot=f"{R}/{{dataset}}/{{subject}}/runs/{{method}}.config.json",
    params:
        settings=lambda w: settings(
            "prior", "render", "regressor", "geometry", *method_sections(w.method)
        ),
        prepared=lambda w, input: os.path.dirname(input.ct),
        xrays=lambda w, input: os.path.dirname(input.xrays),
    threads: 1
    log:
        f"{R}/logs/register/{{dataset}}/{{subject}}/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/register/{{dataset}}/{{subject}}/{{method}}.tsv"
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench register --method {wildcards.method} --prepared {params.prepared}"
        " --xrays {params.xrays} --regressor {input.regressor} --settings {params.settings:q}"
        " --out {output.runs} --trajectory {output.trajectory} --threads {threads} 2> {log}"
