"""`kubectl finetune`: a kubectl plugin and a local dashboard that act with the user's own kubeconfig.

Neither has privileges of its own: every read and the one write (`spec.pin`) is a call the user could
make with kubectl, so RBAC decides what it shows, and "forbidden" is the apiserver's own answer.
"""
