"""Demo data and real PACS servers (Orthanc, dcmqrscp, pynetdicom qrscp) for tests and demos."""
