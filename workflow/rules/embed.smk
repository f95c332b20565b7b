# Per-slide features from a frozen encoder (GPU when one is allocated, else CPU).


rule embed:
    input:
        tiles="results/tiles/{slide}.zarr",
    output:
        directory("results/features/{encoder}/{slide}.zarr"),
    params:
        encoder=encoder_arg,
        seed=config["seed"],
        device=config.get("embed", {}).get("device", "auto"),
        code=code_version("embed.py", "store.py"),
    log:
        "logs/embed/{encoder}/{slide}.log",
    benchmark:
        "results/benchmarks/embed/{encoder}/{slide}.tsv"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil embed --tiles {input.tiles} --encoder {params.encoder} --seed {params.seed} --device {params.device} --threads {threads} --out {output} 2> {log}"
