# The benchmark table (one row per encoder x model x fold + summaries) and its ROC plot.


rule evaluate:
    input:
        all_predictions(),
    output:
        table="results/benchmark.csv",
        plot="results/roc.png",
    params:
        classes=as_arg(config["classes"]),
        bootstrap=config["evaluate"]["bootstrap"],
        seed=config["seed"],
        code=code_version("evaluate.py", "metrics.py"),
    log:
        "logs/evaluate/benchmark.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil evaluate --predictions {input} --classes {params.classes} --bootstrap {params.bootstrap} --seed {params.seed} --out {output.table} --plot {output.plot} 2> {log}"
