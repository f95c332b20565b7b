"""Building blocks of the MIL models: Nystrom attention (TransMIL), graph attention (SRMIL)."""
