# segnode: the DICOM node, with dcmtk for diagnosis.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/segnode
COPY pyproject.toml README.md ./
COPY node node
COPY config config
COPY dicomio dicomio
COPY inference inference
RUN pip install --no-cache-dir .

RUN useradd --system --home-dir /var/lib/segnode --create-home segnode \
 && mkdir -p /etc/segnode \
 && sed -e 's|^  host: 127.0.0.1|  host: 0.0.0.0|' \
        -e 's|storage_dir: ./var/segnode|storage_dir: /var/lib/segnode|' \
        -e 's|  - {ae_title: STORESCU}|  - {ae_title: STORESCU}\n  - {ae_title: SEGNODE-HEALTH}|' \
        config/segnode.example.yaml > /etc/segnode/segnode.yaml
USER segnode
VOLUME ["/var/lib/segnode"]
EXPOSE 11112 9102

HEALTHCHECK --interval=30s --timeout=10s --start-period=20s \
  CMD echoscu -aet SEGNODE-HEALTH -aec SEGNODE 127.0.0.1 11112 || exit 1

ENTRYPOINT ["segnode"]
CMD ["serve", "--config", "/etc/segnode/segnode.yaml"]
