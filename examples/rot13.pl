#!/usr/bin/perl
# rot13.pl: a tinyinetd handler in Perl (core modules only).
#
# Greets the client by its address (TCPREMOTEIP, set by tinyinetd), then
# answers every line with its ROT13, until the client closes the
# connection; at the end it logs how many lines it served to stderr.
#
#   [[service]]
#   name = "rot13"
#   listen = ["127.0.0.1:9882"]
#   program = "/usr/local/libexec/tinyinetd/rot13.pl"
#   stderr = "log"        # stderr lines go to the daemon's log
#
# Buffering: Perl buffers STDOUT when it is not a terminal, and a socket is
# not one; `$| = 1` makes every print go out at once, so an interactive
# client sees each reply before it sends the next line.
use strict;
use warnings;

$| = 1;
my $peer = $ENV{TCPREMOTEIP} // '?';
print "rot13 for $peer: send lines, close to end\n";
my $n = 0;
while (my $line = <STDIN>) {
    $line =~ tr/A-Za-z/N-ZA-Mn-za-m/;
    print $line;
    $n++;
}
# Read to EOF above before exiting: closing with unread input resets the
# connection. STDERR is unbuffered in Perl.
print STDERR "rot13: served $n lines to $peer\n";
exit 0;
