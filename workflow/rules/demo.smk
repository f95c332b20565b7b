# The synthetic demo cohort: each slide of the demo sheet is rendered by a rule, so it is cached.
# Besides the slide: its tumour outlines (tile labels, instance AUC) and its mimic outlines (benign
# tumour look-alikes, the hard negatives that mining should find), both GeoJSON in level-0 px.


rule demo_slide:
    output:
        slide=DEMO_SLIDES,
        annotation=DEMO_TUMOUR,
        mimic=DEMO_MIMIC,  # written beside `annotation` (slidemil.cohorts.demo.mimic_path)
    params:
        positive=demo_positive,
        seed=config["seed"],
        cfg=as_arg(config["demo"]),
        code=code_version("cli:cmd_demo_slide"),
    log:
        "logs/demo_slide/{slide}.log",
    benchmark:
        "results/benchmarks/demo_slide/{slide}.tsv"
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil demo-slide --slide-id {wildcards.slide} --positive {params.positive} --seed {params.seed} --params {params.cfg} --out {output.slide:q} --annotation {output.annotation:q} 2> {log:q}"
