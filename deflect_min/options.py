"""The fixed vocabularies of the training settings, in a module that imports nothing heavy
(``deflect-train --help`` reads them without loading torch)."""

__all__ = ["PROTOCOLS", "PRECISIONS", "LOGGERS"]

#: The two protocols a result can belong to.
PROTOCOLS = ("full", "reduced")
#: Precisions a run accepts (Lightning's names).
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
#: Values of ``logger``: Lightning's CSV logger (no extra dependency), TensorBoard, or none.
LOGGERS = ("csv", "tensorboard", "none")
