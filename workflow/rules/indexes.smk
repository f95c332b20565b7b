# Indexes of per-slide outputs (slidemil.plan.indexes): one TSV per feature folder and one over the graphs.
# mil, heatmaps, probe and hnm_mine take them as input instead of every slide's store, so Snakemake
# plans one edge per job, not one per slide; a newer store rewrites its index, which reruns the readers.


rule features_index:
    input:
        stores=index_feature_stores,
        samples=config["samples"],  # names the slides (n paths on the command line would overflow it)
    output:
        "results/features/{encoder}/index.tsv",
    params:
        features_dir="results/features/{encoder}",
        code=code_version("cli:cmd_features_index"),
    log:
        "logs/features_index/{encoder}.log",
    wildcard_constraints:
        encoder="|".join(map(re.escape, ENCODERS)),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil features-index --features-dir {params.features_dir:q} --samples {input.samples:q} --out {output:q} 2> {log:q}"


use rule features_index as features_index_fold with:
    output:
        "results/features/{encoder}/fold{fold}/index.tsv",
    params:
        features_dir="results/features/{encoder}/fold{fold}",
        code=code_version("cli:cmd_features_index"),
    log:
        "logs/features_index/{encoder}/fold{fold}.log",
    wildcard_constraints:
        encoder="|".join(map(re.escape, FOLD_ENCODERS)) or "NONE",


rule graphs_index:
    input:
        graphs=expand("results/graphs/{slide}.npz", slide=SLIDES),
        samples=config["samples"],
    output:
        GRAPHS_INDEX,
    params:
        code=code_version("cli:cmd_graphs_index"),
    log:
        "logs/graphs_index.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil graphs-index --graphs-dir results/graphs --samples {input.samples:q} --out {output:q} 2> {log:q}"


rule annotations_index:
    input:
        samples=config["samples"],
    output:
        ANNOTATIONS,
    params:
        demo="--demo" if config["demo"]["enabled"] else "",
        code=code_version("cli:cmd_annotations_index"),
    log:
        "logs/annotations_index.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil annotations-index --samples {input.samples:q} {params.demo} --out {output:q} 2> {log:q}"
