rule prepare:
    output:
        ct=f"{R}/{{dataset}}/{{subject}}/prepared/ct.nii.gz",
        mask=f"{R}/{{dataset}}/{{subject}}/prepared/mask.nii.gz",
        landmarks=f"{R}/{{dataset}}/{{subject}}/prepared/landmarks.csv",
        geometry=f"{R}/{{dataset}}/{{subject}}/prepared/geometry.json",
    params:
        settings=lambda w: settings("datasets", "geometry"),
        out=lambda w, output: os.path.dirname(output.ct),
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
        " --settings {params.settings:q} --out {params.out} 2> {log}"


rule simulate:
    input:
        **rules.prepare.output,
    output:
        xrays=f"{R}/{{dataset}}/{{subject}}/xrays/xrays.pt",
        index=f"{R}/{{dataset}}/{{subject}}/xrays/index.csv",
    params:
        settings=lambda w: settings("prior", "render", "simulate"),
        prepared=lambda w, input: os.path.dirname(input.ct),
        out=lambda w, output: os.path.dirname(output.xrays),
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
