"""Model references (tiny:, hub ids, local folders, s3://) resolved to local folders, safely."""
