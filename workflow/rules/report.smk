rule tables:
    input:
        run_csvs(),
    output:
        table_files(),
    params:
        settings=lambda w: settings("methods", "evaluation"),
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
        runs=run_csvs(),
        trajectories=trajectory_csvs(),
        xrays=[f"{subject_dir(d, s)}/xrays/index.csv" for d, s in SUBJECTS],
    output:
        figure_files(),
    params:
        settings=lambda w: settings("methods", "evaluation", "render"),
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench figures --runs {input.runs} --settings {params.settings:q}"
        " --out-dir {params.out} 2> {log}"
