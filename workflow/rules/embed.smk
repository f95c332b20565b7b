# Per-slide features from a frozen encoder (GPU when one is allocated, else CPU). The weights file
# (a local checkpoint, or results/encoders/{encoder}/{scope}/encoder.pt of a pretrained encoder) is a
# declared input: replacing it reruns embedding.

EMBED_SHELL = (
    "python -m slidemil embed --tiles {input.tiles:q} --encoder {params.encoder} {params.weights} "
    "--seed {params.seed} --device {params.device} --threads {threads} --out {output:q} 2> {log:q}"
)


if EMBED_PER_JOB == 1:

    rule embed:
        input:
            tiles="results/tiles/{slide}.zarr",
            weights=encoder_weights,
        output:
            directory("results/features/{encoder}/{slide}.zarr"),
        params:
            encoder=encoder_arg,
            weights=weights_flag,
            seed=config["seed"],
            device=config["embed"]["device"],
            code=code_version("cli:cmd_embed"),
        log:
            "logs/embed/{encoder}/{slide}.log",
        benchmark:
            "results/benchmarks/embed/{encoder}/{slide}.tsv"
        threads: config["embed"]["threads"]
        resources:
            gpu=1,
            mem_mb=4000,
            runtime=30,
        conda:
            "../../envs/torch.yaml"
        shell:
            EMBED_SHELL

else:
    # config embed.slides_per_job > 1: one job (one process start-up) embeds a batch of slides; batches
    # are hash buckets of slide ids (slidemil.plan.jobs), so adding a slide reruns only its batch. One rule
    # per encoder x batch with literal outputs: Snakemake indexes outputs by their text before the first
    # wildcard, and an {encoder} wildcard would file every batch under "results/features/", so each
    # feature lookup would scan all batches (planning quadratic in slides).
    for _encoder in ENCODERS:
        for _batch, _slides in EMBED_BATCHES.items():

            rule:
                name:
                    embed_batch_rule(_encoder, _batch)
                input:
                    tiles=expand("results/tiles/{slide}.zarr", slide=_slides),
                    weights=weights_of(_encoder),
                output:
                    [directory(f"results/features/{_encoder}/{s}.zarr") for s in _slides],
                params:
                    encoder=encoder_block(_encoder),
                    weights=weights_flag,
                    seed=config["seed"],
                    device=config["embed"]["device"],
                    code=code_version("cli:cmd_embed"),
                log:
                    f"logs/embed/{_encoder}/batch{_batch}.log",
                benchmark:
                    f"results/benchmarks/embed/{_encoder}/batch{_batch}.tsv"
                threads: config["embed"]["threads"]
                resources:
                    gpu=1,
                    mem_mb=4000,
                    runtime=30,
                conda:
                    "../../envs/torch.yaml"
                shell:
                    EMBED_SHELL


# Features of an encoder trained on fold k's training slides (config `pretrain` entries that use labels,
# and mining rounds): every slide of the cohort, per fold, batched like `embed` above.
if EMBED_PER_JOB == 1:

    rule embed_fold:
        input:
            tiles="results/tiles/{slide}.zarr",
            weights=["results/encoders/{encoder}/fold{fold}/encoder.pt"],  # a list, as weights_flag reads [0]
        output:
            directory("results/features/{encoder}/fold{fold}/{slide}.zarr"),
        params:
            encoder=fold_encoder_arg,
            weights=weights_flag,
            seed=config["seed"],
            device=config["embed"]["device"],
            code=code_version("cli:cmd_embed"),
        log:
            "logs/embed/{encoder}/fold{fold}/{slide}.log",
        benchmark:
            "results/benchmarks/embed/{encoder}/fold{fold}/{slide}.tsv"
        wildcard_constraints:
            encoder="|".join(FOLD_ENCODERS) or "NONE",
        threads: config["embed"]["threads"]
        resources:
            gpu=1,
            mem_mb=4000,
            runtime=30,
        conda:
            "../../envs/torch.yaml"
        shell:
            EMBED_SHELL

else:
    # one job per encoder x fold x batch (literal outputs, for the reason given above): a job per slide
    # made the benchmark 7000 process start-ups (7 fold-trained encoders x 5 folds x 200 slides)
    for _encoder in FOLD_ENCODERS:
        for _fold in range(N_FOLDS):
            for _batch, _slides in EMBED_BATCHES.items():

                rule:
                    name:
                        embed_batch_rule(f"{_encoder}_fold{_fold}", _batch)
                    input:
                        tiles=expand("results/tiles/{slide}.zarr", slide=_slides),
                        weights=[f"results/encoders/{_encoder}/fold{_fold}/encoder.pt"],
                    output:
                        [directory(f"results/features/{_encoder}/fold{_fold}/{s}.zarr") for s in _slides],
                    params:
                        encoder=fold_encoder_block(_encoder, _fold),
                        weights=weights_flag,
                        seed=config["seed"],
                        device=config["embed"]["device"],
                        code=code_version("cli:cmd_embed"),
                    log:
                        f"logs/embed/{_encoder}/fold{_fold}/batch{_batch}.log",
                    benchmark:
                        f"results/benchmarks/embed/{_encoder}/fold{_fold}/batch{_batch}.tsv"
                    threads: config["embed"]["threads"]
                    resources:
                        gpu=1,
                        mem_mb=4000,
                        runtime=30,
                    conda:
                        "../../envs/torch.yaml"
                    shell:
                        EMBED_SHELL
