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
        classes=as_arg(config["classes"]),
        seed=config["seed"],
        device=config["embed"]["device"],
        launcher=pretrain_launcher,
        code=code_version("cli:cmd_pretrain"),
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
        gpu=pretrain_gpus,
        mem_mb=16000,
        runtime=720,
    conda:
        "../../envs/torch.yaml"
    shell:
        "{params.launcher} pretrain --params {params.cfg} --scope {wildcards.scope} --tiles-dir results/tiles "
        "{params.graphs} {params.folds} --samples {input.samples:q} --classes {params.classes} "
        "--seed {params.seed} --device {params.device} --threads {threads} --out {output:q} 2> {log:q}"
