"""Public data sets' own file layouts, read into the preprocessing job's labelled batches.

The raw Ali-CCP release (`aliccp`: its line rules; `aliccp_join`: read, parse and the md5
join) and the derived CSV/text layouts of torch-rechub, PaddleRec and AITM's AliExpress
(`derived`). Each ends where the log job's label step ends: labelled RecordBatches of one
split (`transforms.records.labelled_schema`), which `transforms.job` writes with the same
encode / write / analyze / stats steps. docs/ALI_CCP.md documents every layout.
"""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# The derived layouts (`derived`), by their --source name in pipeline.preprocess; here, in a
# module without Beam, so the command line checks --source before importing the job.
RECHUB_CSV = "rechub_csv"
PADDLE_ESMM = "paddle_esmm"
ALIEXPRESS = "aliexpress"
LAYOUTS = (RECHUB_CSV, PADDLE_ESMM, ALIEXPRESS)
