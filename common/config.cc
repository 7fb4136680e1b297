namespace pmdrl {}
