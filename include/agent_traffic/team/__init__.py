"""Team: what the data team reads back: queries over staging and the HTML reports."""
