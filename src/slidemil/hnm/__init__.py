"""Hard-negative mining (HNM-WSI, seed paper 002) as rounds of the workflow: `mine` (the MIL model,
tile scores, pseudo labels, the gate), `finetune` (the encoder fine-tuned on the mined tiles),
`evidence` (do the mined negatives find the mimics?), `job` (the rules' entry points).

Per run (config `hnm`, name: params), fold k and round t = 1..rounds:

1. `mine_round`: DSMIL + MIRank trained on the round-(t-1) features of fold k's training slides,
   the epoch selected on its validation slides (slidemil.mil.loop); every tile of the training
   slides scored (sigmoid of the instance logit); the gate: the round's scores become the pseudo
   labels only if the validation metric did not drop below the best of the earlier rounds (else
   the last accepted ones stay). Writes pseudo_labels.npz and gate.json.
2. `finetune_round`: the round-(t-1) encoder fine-tuned with HNM-WSI's SupCon steps
   (objective `supcon_hnm_steps`) on the mined tiles through slidemil.ssl.pretrain (checkpoint per
   epoch, resume): hard negatives = the top `neg_ratio` quantile of negative slides' tiles;
   pseudo-positives = positive slides' tiles above `pos_threshold`, of which a self-paced top
   quantile (spl_start -> spl_end after the warm-up) drives step B.
3. The workflow re-embeds every slide of the fold (rule embed_fold) with the round-t encoder
   `{run}-r{t}`, an encoder of the benchmark like any other.

Only training slides' labels drive mining; validation slides' labels select the MIL epoch and
gate; test slides are never read here (their features are made by embed_fold and scored by the
benchmark's own MIL rules).

Departures from the authors' code (winston52/HNM-WSI): a round is a fixed number of fine-tune
epochs (`epochs`; theirs re-mines every MIL_every_n_epochs epochs of one long run) with the
self-paced ratio running over the round's epochs; the projection head starts afresh each round;
the MIL epoch is selected on validation loss and the gate reads validation F1 (or AUC) at that
epoch, where theirs selects on test AUC; the two SupCon steps are one optimiser step on their
sum (slidemil.ssl.losses.hnm_steps).
"""
