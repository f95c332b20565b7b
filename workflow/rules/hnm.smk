# Hard-negative mining (config `hnm`, slidemil.hnm; seed paper 002). Per run, fold k and round t >= 1:
# hnm_mine trains DSMIL + MIRank on the round-(t-1) features (training slides; validation slides select
# and gate), scores the training slides' tiles and keeps or rejects the new pseudo labels; hnm_finetune
# fine-tunes the round-(t-1) encoder on the mined tiles (GPU, resumable); embed_fold re-embeds the fold
# with it as encoder {run}-r{t}, which the usual mil/evaluate rules benchmark. The round is a wildcard:
# an interrupted loop resumes at the round it reached, and raising `rounds` plans only the new rounds.

rule hnm_mine:
    input:
        unpack(hnm_mine_inputs),
    output:
        labels="results/hnm/{run}/fold{fold}/round{round}/pseudo_labels.npz",
        gate="results/hnm/{run}/fold{fold}/round{round}/gate.json",
        model="results/hnm/{run}/fold{fold}/round{round}/mil/model.pt",
        history="results/hnm/{run}/fold{fold}/round{round}/mil/history.csv",
    params:
        cfg=hnm_arg,
        features_dir=hnm_features_dir,
        previous=hnm_previous_flag,
        classes=as_arg(config["classes"]),
        seed=config["seed"],
        device=config["mil"]["device"],
        out_dir="results/hnm/{run}/fold{fold}/round{round}",
        code=code_version("cli:cmd_hnm_mine"),
    log:
        "logs/hnm_mine/{run}/fold{fold}/round{round}.log",
    benchmark:
        "results/benchmarks/hnm_mine/{run}/fold{fold}/round{round}.tsv"
    wildcard_constraints:
        run="|".join(HNM) or "NONE",
        round=r"[1-9]\d*",
    threads: 1
    priority: 10  # the mining rounds are one long chain: start each link as soon as it can run
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil hnm-mine --features-dir {params.features_dir:q} --folds {input.folds:q} "
        "--samples {input.samples:q} --classes {params.classes} --fold {wildcards.fold} --round {wildcards.round} "
        "--params {params.cfg} {params.previous} --seed {params.seed} --device {params.device} --threads {threads} "
        "--out-dir {params.out_dir:q} 2> {log:q}"


rule hnm_finetune:
    input:
        labels="results/hnm/{run}/fold{fold}/round{round}/pseudo_labels.npz",
        init=hnm_init_weights,
        tiles=QC_TABLE,  # stands in for every tile store (the CLI finds them from the sheet)
        samples=config["samples"],
    output:
        "results/encoders/{run}-r{round}/fold{fold}/encoder.pt",
    params:
        cfg=hnm_arg,
        base=hnm_base_arg,
        init=hnm_init_flag,
        seed=config["seed"],
        device=config["embed"]["device"],
        code=code_version("cli:cmd_hnm_finetune"),
    log:
        "logs/hnm_finetune/{run}/fold{fold}/round{round}.log",
    benchmark:
        "results/benchmarks/hnm_finetune/{run}/fold{fold}/round{round}.tsv"
    wildcard_constraints:
        run="|".join(HNM) or "NONE",
        round=r"[1-9]\d*",
    threads: 2
    priority: 10
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil hnm-finetune --tiles-dir results/tiles --samples {input.samples:q} --pseudo-labels {input.labels:q} "
        "--params {params.cfg} --base {params.base} {params.init} --seed {params.seed} --device {params.device} "
        "--threads {threads} --out {output:q} 2> {log:q}"


rule hnm_mining:
    input:
        unpack(hnm_mining_inputs),
    output:
        report(
            "results/hnm/{run}/mining.csv",
            caption="../report/hnm_mining.rst",
            category="6. Hard-negative mining",
            labels={"run": "{run}"},
        ),
    params:
        rounds=hnm_rounds_arg,
        cfg=hnm_arg,
        code=code_version("cli:cmd_hnm_mining"),
    log:
        "logs/hnm_mining/{run}.log",
    wildcard_constraints:
        run="|".join(HNM) or "NONE",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil hnm-mining --rounds {params.rounds} --tiles-dir results/tiles --samples {input.samples:q} "
        "--annotations {input.annotations:q} --params {params.cfg} --out {output:q} 2> {log:q}"
