"""Spreadsheet imports: CSV and XLSX files read into typed rows, every bad cell reported."""
