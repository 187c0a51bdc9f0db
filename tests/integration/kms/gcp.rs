// placeholder: a helper writes these tests
