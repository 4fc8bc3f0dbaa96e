# One image for all three services; the command picks the service.
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY cli ./cli
RUN pip install --no-cache-dir '.[tracing]' \
    && useradd --system --uid 10001 tierstream
USER tierstream
EXPOSE 8080 8081 8082
ENTRYPOINT ["tierstream"]
CMD ["--help"]
