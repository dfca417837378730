"""Measurement beside the runtime: the benchmark (:mod:`.bench`), the tuner's search
(:mod:`.tuner`), roofline calibration (:mod:`.calibrate`), the decoder benchmark
(:mod:`.model_bench`) and what they share (:mod:`.common`). ``import vkqlinear`` loads
none of them; the tuning store they write, which ``auto`` reads, is
:mod:`vkqlinear.tuning`."""
