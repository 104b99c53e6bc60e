# Placeholder: the deployment issue provides the CPU and GPU images.
FROM python:3.11-slim
