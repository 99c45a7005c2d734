"""Reading a user's data: sources, decoding, records, coercion, schema, features."""
