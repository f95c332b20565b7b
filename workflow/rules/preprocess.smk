# Per-slide preprocessing: tissue mask, tiles on the global grid, neighbour graph, cohort QC.


rule mask:
    input:
        slide=slide_path,
    output:
        mask="results/masks/{slide}.png",
        meta="results/masks/{slide}.json",
        qc="results/qc/mask/{slide}.png",
    params:
        cfg=as_arg(config["mask"]),
        mpp=mpp_arg,
        on_error=config["on_slide_error"],
        code=code_version("cli:cmd_mask"),
    log:
        "logs/mask/{slide}.log",
    benchmark:
        "results/benchmarks/mask/{slide}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil mask --slide {input.slide:q} --slide-id {wildcards.slide} {params.mpp} --params {params.cfg} --on-slide-error {params.on_error} --out {output.mask:q} --qc {output.qc:q} 2> {log:q}"


rule tile:
    input:
        slide=slide_path,
        mask="results/masks/{slide}.png",
        meta="results/masks/{slide}.json",
        mask_qc="results/qc/mask/{slide}.png",
    output:
        tiles=directory("results/tiles/{slide}.zarr"),
        qc="results/qc/tiles/{slide}.png",
    params:
        cfg=as_arg(config["tile"]),
        mpp=mpp_arg,
        on_error=config["on_slide_error"],
        code=code_version("cli:cmd_tile"),
    log:
        "logs/tile/{slide}.log",
    benchmark:
        "results/benchmarks/tile/{slide}.tsv"
    threads: 2
    resources:
        mem_mb=1500,
        runtime=30,
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil tile --slide {input.slide:q} --slide-id {wildcards.slide} {params.mpp} --params {params.cfg} --on-slide-error {params.on_error} --mask {input.mask:q} --mask-qc {input.mask_qc:q} --threads {threads} --out {output.tiles:q} --qc {output.qc:q} 2> {log:q}"


rule graph:
    input:
        tiles="results/tiles/{slide}.zarr",
    output:
        "results/graphs/{slide}.npz",
    params:
        radius=config["graph"]["radius"],
        code=code_version("cli:cmd_graph"),
    log:
        "logs/graph/{slide}.log",
    benchmark:
        "results/benchmarks/graph/{slide}.tsv"
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil graph --tiles {input.tiles:q} --radius {params.radius} --out {output:q} 2> {log:q}"


rule qc_cohort:
    input:
        tiles=expand("results/tiles/{slide}.zarr", slide=SLIDES),
        masks=expand("results/masks/{slide}.json", slide=SLIDES),
        samples=config["samples"],  # names the slides (n paths on the command line would overflow it)
    output:
        table=report(
            "results/qc/cohort.tsv",
            caption="../report/qc_table.rst",
            category="6. Quality control",
            labels={"result": "QC per slide"},
        ),
        plot=report(
            "results/qc/cohort.png",
            caption="../report/qc_plot.rst",
            category="6. Quality control",
            labels={"result": "QC overview"},
        ),
    params:
        code=code_version("cli:cmd_qc"),
    log:
        "logs/qc_cohort/cohort.log",
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil qc --tiles-dir results/tiles --masks-dir results/masks --samples {input.samples:q} --out {output.table:q} --plot {output.plot:q} 2> {log:q}"


# Optional, not in `rule all`: CLAM/TRIDENT-style HDF5 per slide (`snakemake --cores 2 export_h5_all`).
rule export_h5:
    input:
        unpack(export_inputs),
    output:
        "results/export/{slide}.h5",
    params:
        features=export_features_arg,
        code=code_version("cli:cmd_export_h5"),
    log:
        "logs/export_h5/{slide}.log",
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil export-h5 --tiles {input.tiles:q} {params.features} --out {output:q} 2> {log:q}"


rule export_h5_all:
    input:
        expand("results/export/{slide}.h5", slide=SLIDES),
    conda:
        "../../envs/slide-io.yaml"
