"""S3-compatible object storage: locations and clients (`client`), parallel verified
transfers (`transfer`), remote file listings for verification (`files`), the catalogue's
conditional rewrite (`catalog`) and publishing a model folder (`publish`).

boto3 is imported only here and below, so `foundry --help` and `foundry lint` never pay
for it.
"""
