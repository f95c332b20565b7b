# Encoder pretraining (config `pretrain`): SSL objectives, spatial pairs, WeakSupCon. One job per
# (encoder, scope): scope `all` (label-free, once on the cohort) or fold{k} (the fold's training slides).
# A preempted job resumes from results/encoders/{encoder}/{scope}/checkpoints/last.pt. An entry with
# `gpus: N` > 1 runs under torchrun (DDP, one process per GPU; SLURM gets --gpus N from the gpu resource).


rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        "results/encoders/{encoder}/{scope}/encoder.pt",
    params:
        cfg=pretrain_arg,
        folds=pretrain_folds_flag,
        graphs=pretrain_graphs_flag,
        classes=pretrain_classes,
        slides=SLIDE_IDS,  # label-free entries read the sheet's ids only (labels: the sheet is an input)
        sheet=SAMPLE_SHEET,
        seed=config["seed"],
        device=config["embed"]["device"],
        code=pretrain_code,
    log:
        "logs/pretrain/{encoder}/{scope}.log",
    benchmark:
        "results/benchmarks/pretrain/{encoder}/{scope}.tsv"
    wildcard_constraints:
        encoder="|".join(PRETRAIN) or "NONE",
        scope=r"all|fold\d+",
    threads: 2
    priority: 10  # a long job that every embed and MIL job of its encoder waits for
    resources:
        gpu=pretrain_gpus,  # > 1: torchrun, one process per GPU (the shell reads it: gpus change no weights)
        workers=pretrain_workers,
        mem_mb=16000,
        runtime=720,
    conda:
        "../../envs/torch.yaml"
    shell:
        "launch=python; [ {resources.gpu} -le 1 ] || launch='torchrun --standalone --nproc_per_node {resources.gpu}'; "
        "$launch -m slidemil pretrain --params {params.cfg} --workers {resources.workers} --scope {wildcards.scope} --tiles-dir results/tiles "
        "{params.graphs} {params.folds} --samples {params.sheet:q} --classes {params.classes} "
        "--seed {params.seed} --device {params.device} --threads {threads} --out {output:q} 2> {log:q}"
