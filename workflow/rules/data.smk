# Data: download -> prepare -> simulate for datasets with simulated X-rays, download -> parse for
# datasets with real ones. Either way a subject ends with {dataset}/{subject}/prepared/ and
# {dataset}/{subject}/xrays/, so the later rules never depend on the dataset (each of those files
# has exactly one producer: the rules' dataset constraints do not overlap).


localrules:
    download,


rule download:
    output:
        # The record written after the file is downloaded and verified, or after a file put there
        # by hand is hashed (and checked against a pinned digest): the file itself is never an
        # output, so Snakemake never deletes a user's copy.
        record=PLAN.pattern("download_record"),
    params:
        settings=lambda w: PLAN.download_settings(w.dataset, w.file),
        root=lambda w: f"{PLAN.data_root}/{w.dataset}",
    wildcard_constraints:
        dataset=alternatives(PLAN.downloaded_datasets),
        file=r"[^/]+\.h5|(volumes|labels)/[^/]+\.nii\.gz",
    log:
        f"{R}/logs/download/{{dataset}}/{{file}}.log",
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench download --dataset {wildcards.dataset} --file {wildcards.file:q}"
        " --root {params.root:q} --settings {params.settings:q} 2> {log}"


rule prepare:
    input:
        raw_inputs,
    output:
        ct=PLAN.pattern("ct"),
        mask=PLAN.pattern("mask"),
        landmarks=PLAN.pattern("landmarks"),
        geometry=PLAN.pattern("geometry"),
    params:
        settings=lambda w: PLAN.dataset_settings(w.dataset, "geometry"),
        source=source_option,
        out=lambda w, output: os.path.dirname(output.ct),
    wildcard_constraints:
        dataset=alternatives(PLAN.simulated_datasets),
    log:
        f"{R}/logs/prepare/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{R}/benchmarks/prepare/{{dataset}}/{{subject}}.tsv"
    resources:
        mem_mb=6000,
        runtime=20,
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench prepare --dataset {wildcards.dataset} --subject {wildcards.subject}"
        " {params.source} --settings {params.settings:q} --out {params.out} 2> {log}"


rule simulate:
    input:
        **rules.prepare.output,
    output:
        xrays=PLAN.pattern("xrays"),
        index=PLAN.pattern("xray_index"),
    params:
        settings=lambda w: PLAN.simulate_settings(w.dataset, w.subject),
        prepared=lambda w, input: os.path.dirname(input.ct),
        out=lambda w, output: os.path.dirname(output.xrays),
    wildcard_constraints:
        dataset=alternatives(PLAN.simulated_datasets),
    log:
        f"{R}/logs/simulate/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{R}/benchmarks/simulate/{{dataset}}/{{subject}}.tsv"
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench simulate --dataset {wildcards.dataset} --subject {wildcards.subject}"
        " --prepared {params.prepared} --settings {params.settings:q} --out {params.out} 2> {log}"


# Real X-rays: CT, landmarks and X-rays with their ground truth come out of one reader (DeepFluoro,
# Ljubljana, custom), which writes the same prepared/ and xrays/ files as prepare and simulate.
rule parse:
    input:
        raw_inputs,
    output:
        ct=PLAN.pattern("ct"),
        mask=PLAN.pattern("mask"),
        landmarks=PLAN.pattern("landmarks"),
        geometry=PLAN.pattern("geometry"),
        xrays=PLAN.pattern("xrays"),
        index=PLAN.pattern("xray_index"),
    params:
        settings=lambda w: PLAN.dataset_settings(w.dataset),
        source=lambda w: PLAN.source_path(w.dataset, w.subject),
        prepared=lambda w, output: os.path.dirname(output.ct),
        xrays=lambda w, output: os.path.dirname(output.xrays),
    wildcard_constraints:
        dataset=alternatives(PLAN.parsed_datasets),
    log:
        f"{R}/logs/parse/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{R}/benchmarks/parse/{{dataset}}/{{subject}}.tsv"
    resources:
        mem_mb=12000,
        runtime=30,
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench parse --dataset {wildcards.dataset} --subject {wildcards.subject}"
        " --source {params.source:q} --settings {params.settings:q}"
        " --prepared {params.prepared} --xrays {params.xrays} 2> {log}"


# Parsed subjects are checked against their raw files before any model is trained on them.
rule check_data:
    input:
        raw_inputs,
        **rules.parse.output,
    output:
        report(
            PLAN.pattern("check_data"),
            caption="../report/check_data.rst",
            category="Data checks",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "subject": "{subject}"},
        ),
    params:
        settings=subject_settings("prior", "render"),
        source=source_option,
        prepared=lambda w, input: os.path.dirname(input.ct),
        xrays=lambda w, input: os.path.dirname(input.xrays),
    wildcard_constraints:
        dataset=alternatives(PLAN.parsed_datasets),
    log:
        f"{R}/logs/check_data/{{dataset}}/{{subject}}.log",
    resources:
        mem_mb=6000,
        runtime=20,
    conda:
        "../../envs/regbench.yaml"
    shell:
        "python -m regbench check-data --dataset {wildcards.dataset} --subject {wildcards.subject}"
        " {params.source} --prepared {params.prepared} --xrays {params.xrays}"
        " --settings {params.settings:q} --out {output} 2> {log}"
