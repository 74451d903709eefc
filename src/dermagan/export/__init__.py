"""Registered classifiers as ONNX files (fp32 and static int8), an offline bundle, and a predict benchmark.

``dermagan export`` (:func:`dermagan.export.registered.run_export`) and ``dermagan bench-predict``
(:func:`dermagan.export.bench.run_bench_predict`); neither is a pipeline stage.
"""
