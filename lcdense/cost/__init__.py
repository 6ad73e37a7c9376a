"""What a training step costs: tensor memory counted live (:mod:`~lcdense.cost.memory`), its
prediction on fake tensors (:mod:`~lcdense.cost.estimate`) and the side-by-side benchmark of
LC-Block forms (:mod:`~lcdense.cost.bench`).

Built on :mod:`lcdense.core`; knows nothing of tasks or runs.
"""
