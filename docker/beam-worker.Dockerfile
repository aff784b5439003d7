# Custom SDK container for the Beam preprocessing job on Dataflow (or any portable runner).
# Build from the repo root:
#   docker build -f docker/beam-worker.Dockerfile -t REGION-docker.pkg.dev/PROJECT/cvr/beam-worker:0.1.0 .
# Run the job with: --sdk_container_image=<that tag> (no --setup_file needed then).
FROM apache/beam_python3.11_sdk:2.61.0

WORKDIR /opt/cvr
COPY constraints.txt setup.py ./
COPY configs/ configs/
COPY features/ features/
COPY transforms/ transforms/
COPY layouts/ layouts/
COPY pipeline/ pipeline/
COPY models/ models/
COPY training/ training/
COPY evaluation/ evaluation/
COPY serving/ serving/
COPY simulation/ simulation/
COPY benchmarks/ benchmarks/
RUN pip install --no-cache-dir -c constraints.txt .

# The Beam SDK harness stays the entry point (inherited ENTRYPOINT /opt/apache/beam/boot).
