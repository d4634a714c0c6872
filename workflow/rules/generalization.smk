# Patient-agnostic scenario (the generalization table, Table 2). Per dataset with an `agnostic`
# block: one regressor and one similarity per learned method trained on its train_subjects,
# every method registered on the held-out test_subjects, everything under {R}/_agnostic/{dataset}/:
#   models/regressor.pt, similarity-{method}.pt (+ .log.csv, .config.json)
#   {subject}/runs/{method}.csv, .trajectory.csv       registrations of a held-out subject
# The held-out subjects' prepared/ and xrays/ are the usual {R}/{dataset}/{subject}/ ones.
# Included after register.smk and report.smk (it reuses rule register and report_common).


rule train_regressor_agnostic:
    input:
        agnostic_train_inputs,
    output:
        model=PLAN.pattern("agnostic_regressor"),
        log_csv=PLAN.pattern("agnostic_regressor_log"),
        snapshot=PLAN.pattern("agnostic_regressor_snapshot"),
    # Its similarity training and registrations wait for it: start it early.
    priority: 20  # above two priority-5 trainings: snakemake weighs the sum of a batch
    params:
        settings=agnostic_settings("prior", "render", "regressor", "geometry", "augment"),
        prepared=agnostic_train_dirs,
    wildcard_constraints:
        dataset=alternatives(PLAN.agnostic),
    # One thread, as every job here: two threads train 1.5x faster but cost 1.3x the
    # core-seconds, and a two-thread job leaves a core idle until both are free (the
    # cluster profile sets more).
    threads: 1
    log:
        f"{R}/logs/train_regressor_agnostic/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/train_regressor_agnostic/{{dataset}}.tsv"
    resources:
        mem_mb=8000,
        runtime=480,
        gpu=PLAN.gpu,
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench train-regressor-agnostic --dataset {wildcards.dataset}"
        " --prepared {params.prepared} --settings {params.settings:q}"
        " --out {output.model} --log-csv {output.log_csv} --threads {threads} 2> {log}"


rule train_similarity_agnostic:
    input:
        agnostic_train_inputs,
        regressor=rules.train_regressor_agnostic.output.model,
    output:
        model=PLAN.pattern("agnostic_similarity"),
        log_csv=PLAN.pattern("agnostic_similarity_log"),
        snapshot=PLAN.pattern("agnostic_similarity_snapshot"),
    params:
        settings=lambda w: PLAN.similarity_train_settings(w.dataset, None, w.method),
        prepared=agnostic_train_dirs,
    wildcard_constraints:
        dataset=alternatives(PLAN.agnostic),
    threads: 1
    log:
        f"{R}/logs/train_similarity_agnostic/{{dataset}}/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/train_similarity_agnostic/{{dataset}}/{{method}}.tsv"
    resources:
        mem_mb=8000,
        runtime=480,
        gpu=PLAN.gpu,
    conda:
        "../../envs/regbench.yaml"
    priority: 5  # every similarity trained before the registrations queue behind them
    shell:
        "python -m regbench train-similarity-agnostic --dataset {wildcards.dataset}"
        " --variant {wildcards.method} --prepared {params.prepared}"
        " --regressor {input.regressor} --settings {params.settings:q}"
        " --out {output.model} --log-csv {output.log_csv} --threads {threads} 2> {log}"


# Rule register with the dataset's agnostic models; keep its inputs in step with register.smk
# (tests/test_datasets_dag.py checks that both rules have the same named inputs).
use rule register as register_agnostic with:
    input:
        ct=rules.prepare.output.ct,
        landmarks=rules.prepare.output.landmarks,
        geometry=rules.prepare.output.geometry,
        xrays=rules.simulate.output.xrays,
        index=rules.simulate.output.index,
        regressor=rules.train_regressor_agnostic.output.model,
        model=agnostic_similarity_model,
    output:
        runs=PLAN.pattern("agnostic_runs"),
        trajectory=PLAN.pattern("agnostic_trajectory"),
        snapshot=PLAN.pattern("agnostic_run_snapshot"),
    params:
        settings=lambda w: PLAN.register_settings(w.dataset, w.subject, w.method, agnostic=True),
    wildcard_constraints:
        dataset=alternatives(PLAN.agnostic),
    log:
        f"{R}/logs/register_agnostic/{{dataset}}/{{subject}}/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/register_agnostic/{{dataset}}/{{subject}}/{{method}}.tsv"


rule generalization_table:
    input:
        PLAN.agnostic_run_csvs(),
    output:
        report_tables(PLAN.generalization_files()),
    params:
        settings=PLAN.generalization_settings(),
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{R}/logs/generalization_table.log",
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench generalization-table --runs {input} --settings {params.settings:q}"
        " --out-dir {params.out} 2> {log}"
