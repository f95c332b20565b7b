# The synthetic demo cohort: each slide of the demo sheet is rendered by a rule, so it is cached.


rule demo_slide:
    output:
        slide=DEMO_SLIDES,
        annotation="results/demo/annotations/{slide}.geojson",
    params:
        positive=demo_positive,
        seed=config["seed"],
        cfg=as_arg(config["demo"]),
        code=code_version("demo.py"),
    log:
        "logs/demo_slide/{slide}.log",
    benchmark:
        "results/benchmarks/demo_slide/{slide}.tsv"
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil demo-slide --slide-id {wildcards.slide} --positive {params.positive} --seed {params.seed} --params {params.cfg} --out {output.slide} --annotation {output.annotation} 2> {log}"
