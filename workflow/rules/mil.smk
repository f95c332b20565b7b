# Fold assignment and MIL training per encoder x model x fold x seed (GPU when allocated, else CPU).


rule folds:
    input:
        samples=config["samples"],  # the whole sheet, not the QC table: QC changes never move a slide
    output:
        "results/folds.csv",
    params:
        cfg=as_arg(config["evaluate"]),
        seed=config["seed"],
        code=code_version("folds.py"),
    log:
        "logs/folds/folds.log",
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil folds --samples {input.samples} --params {params.cfg} --seed {params.seed} --out {output} 2> {log}"


rule mil:
    input:
        features=slide_features,
        folds="results/folds.csv",
        samples=config["samples"],
    output:
        predictions="results/mil/{encoder}/{model}/fold{fold}/seed{seed}/predictions.csv",
        model="results/mil/{encoder}/{model}/fold{fold}/seed{seed}/model.pt",
        attention="results/mil/{encoder}/{model}/fold{fold}/seed{seed}/attention.npz",
        history="results/mil/{encoder}/{model}/fold{fold}/seed{seed}/history.csv",
    params:
        cfg=as_arg(config["mil"]),
        classes=as_arg(config["classes"]),
        features_dir="results/features/{encoder}",
        out_dir="results/mil/{encoder}/{model}/fold{fold}/seed{seed}",
        code=code_version("mil/models.py", "mil/train.py", "store.py"),
    log:
        "logs/mil/{encoder}/{model}/fold{fold}/seed{seed}.log",
    benchmark:
        "results/benchmarks/mil/{encoder}/{model}/fold{fold}/seed{seed}.tsv"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil mil --features-dir {params.features_dir} --folds {input.folds} --samples {input.samples} --fold {wildcards.fold} --model {wildcards.model} --params {params.cfg} --classes {params.classes} --seed {wildcards.seed} --threads {threads} --out-dir {params.out_dir} 2> {log}"
