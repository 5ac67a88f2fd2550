package PAGI::Test::Client::Check;
use strict;
use warnings;

our $VERSION = '0.01';

use Scalar::Util qw(looks_like_number);

=head1 NAME

PAGI::Test::Client::Check - internal: field checks shared by the test client's protocols

=head1 DESCRIPTION

Internal to L<PAGI::Test::Client>. Each function returns C<undef> when the
value is fine, or the end of a message ("must be ...") that the caller
prefixes with the event type and the field name, as PAGI::Server words
its own refusals.

=cut

sub status {
    my ($v) = @_;
    return defined $v && !ref $v && $v =~ /\A\d{3}\z/ ? undef : 'must be an integer from 100 to 999';
}

sub string { ref $_[0] ? 'must be a string, not a reference' : undef }

sub bytes {
    my ($v) = @_;
    return 'must be a byte string, not a reference' if ref $v;
    return 'must be bytes (it has characters above 255; encode it first)'
        if utf8::is_utf8($v) && $v =~ /[^\x00-\xFF]/;
    return undef;
}

sub non_negative_number {
    my ($v) = @_;
    return !ref $v && looks_like_number($v) && $v >= 0 && $v == $v && $v != 9**9**9
        ? undef : 'must be a non-negative number';
}

sub flag {
    my ($v) = @_;
    return undef if !defined $v;
    return !ref $v && ($v eq '' || looks_like_number($v)) ? undef : 'must be 0 or 1';
}

# Header lists as PAGI-SPEC 2.2 and 3.1.3 have them: [[name, value], ...],
# bytes, no CR, LF or NUL anywhere, no control characters in names.
sub headers {
    my ($h) = @_;
    return 'must be an array reference of [name, value] pairs' unless ref $h eq 'ARRAY';
    for my $i (0 .. $#$h) {
        my $pair = $h->[$i];
        return "entry $i must be a [name, value] pair" unless ref $pair eq 'ARRAY' && @$pair == 2;
        my ($name, $value) = @$pair;
        for ([ name => $name ], [ value => $value ]) {
            my ($what, $v) = @$_;
            return "entry $i has an undefined $what" unless defined $v;
            my $problem = bytes($v) or next;
            return "entry $i: the $what $problem";
        }
        return "entry $i: the name is empty" unless length $name;
        return "entry $i ('$name'): the name contains CR, LF or a null byte" if $name =~ /[\r\n\0]/;
        return "entry $i ('$name'): the name contains control characters" if $name =~ /[\x00-\x1F\x7F]/;
        return "entry $i ('$name'): the value contains CR, LF or a null byte" if $value =~ /[\r\n\0]/;
    }
    return undef;
}

1;
