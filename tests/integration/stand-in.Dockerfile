# The stand-in trainer image of the integration tests: the operator image (Python and the kubernetes
# client) with tests/integration/stand_in_trainer.py as `finetune-trainer`. Test tooling, never
# shipped; hack/build-images.sh builds it with this folder as the context and the operator image as
# BASE, cached by the hash of the two files and that image.
ARG BASE
FROM ${BASE}
# In place of the operator image's own `finetune-trainer` script (its package is installed there,
# without torch or transformers), which is first on PATH.
USER 0
COPY stand_in_trainer.py /opt/venv/bin/finetune-trainer
RUN chmod 0755 /opt/venv/bin/finetune-trainer
USER 65532:65532
ENTRYPOINT ["finetune-trainer"]
