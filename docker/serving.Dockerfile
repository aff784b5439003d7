# TF Serving with an exported model baked in.
# Build from the repo root, pointing EXPORT_DIR at an export base (the folder that holds
# numeric version directories, e.g. runs/demo/models/esmm/export, what `make demo` writes):
#   docker build -f docker/serving.Dockerfile --build-arg EXPORT_DIR=runs/demo/models/esmm/export \
#     -t cvr-serving:0.1.0 .
# Run and query (REST on 8501, gRPC on 8500):
#   docker run --rm -p 8501:8501 cvr-serving:0.1.0
#   curl -d @request.json http://localhost:8501/v1/models/cvr:predict
# The SavedModel's assets.extra/tf_serving_warmup_requests warms the model up at load.
FROM tensorflow/serving:2.16.1

ARG EXPORT_DIR=runs/demo/models/esmm/export
ENV MODEL_NAME=cvr
COPY ${EXPORT_DIR}/ /models/cvr/
EXPOSE 8500 8501
# Inherited entry point: tensorflow_model_server --model_name=${MODEL_NAME}
#   --model_base_path=/models/${MODEL_NAME} --port=8500 --rest_api_port=8501
