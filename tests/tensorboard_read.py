"""Reads a folder of TensorBoard event files with TensorBoard's own EventAccumulator and prints
what it found as JSON: {"scalars": {tag: [[step, value], ...]}, "histograms": {tag: [[step,
num, min, max], ...]}, "descriptions": {tag: text}}. Used by tests/tensorboard_test.cpp."""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator as ea

acc = ea.EventAccumulator(sys.argv[1], size_guidance={k: 0 for k in (
    ea.SCALARS, ea.HISTOGRAMS, ea.COMPRESSED_HISTOGRAMS, ea.IMAGES, ea.AUDIO, ea.TENSORS)})
acc.Reload()
tags = acc.Tags()
out = {"scalars": {}, "histograms": {}, "descriptions": {}}
for t in tags["scalars"]:
    out["scalars"][t] = [[e.step, e.value] for e in acc.Scalars(t)]
for t in tags["histograms"]:
    out["histograms"][t] = [[e.step, e.histogram_value.num, e.histogram_value.min,
                             e.histogram_value.max] for e in acc.Histograms(t)]
    out["descriptions"][t] = acc.SummaryMetadata(t).summary_description
print(json.dumps(out))
