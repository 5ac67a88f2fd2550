package PAGI::Server::Validate;
use strict;
use warnings;

our $VERSION = '0.01';

use Scalar::Util qw(looks_like_number);

=head1 NAME

PAGI::Server::Validate - full type checks of outbound PAGI http events

=head1 SYNOPSIS

    my $problem = PAGI::Server::Validate->http_event($event);   # undef when fine

=head1 DESCRIPTION

The server always checks what it must to keep the wire correct (known type,
required fields, order). With C<validate_events> on (the default in
development mode) every field an event carries is also type-checked, so
an app learns of a mistake where it made it. Messages name the event and
the field. Unknown extra fields are allowed (PAGI-SPEC 1.5).

=head1 METHODS

=head2 http_event

Returns a message for the first problem found, or C<undef>.

=cut

my %CHECKS = (
    'http.response.start' => [
        [ status   => 1, \&_int ],
        [ headers  => 0, \&_headers ],
        [ trailers => 0, \&_bool ],
    ],
    'http.response.body' => [
        [ body   => 0, \&_bytes ],
        [ file   => 0, \&_string ],
        [ fh     => 0, \&_handle ],
        [ offset => 0, \&_non_negative ],
        [ length => 0, \&_non_negative ],
        [ more   => 0, \&_bool ],
    ],
    'http.response.trailers' => [ [ headers => 0, \&_headers ] ],
    'http.fullflush'         => [],
);

sub http_event {
    my ($class, $event) = @_;
    my $type = $event->{type};
    my $checks = $CHECKS{$type} or return undef;    # unknown types are refused elsewhere
    for my $check (@$checks) {
        my ($field, $required, $test) = @$check;
        my $value = $event->{$field};
        if (!defined $value) {
            return "$type: '$field' is required" if $required;
            next;
        }
        my $problem = $test->($value) or next;
        return "$type: '$field' $problem";
    }
    return undef;
}

sub _int { !ref $_[0] && $_[0] =~ /\A-?\d+\z/ ? undef : 'must be an integer' }

sub _non_negative { !ref $_[0] && $_[0] =~ /\A\d+\z/ ? undef : 'must be a non-negative integer' }

sub _bool { !ref $_[0] && ($_[0] eq '' || looks_like_number($_[0])) ? undef : 'must be 0 or 1' }

sub _string { ref $_[0] ? 'must be a string' : undef }

sub _handle { Scalar::Util::openhandle($_[0]) ? undef : 'must be an open filehandle' }

sub _bytes {
    my ($v) = @_;
    return 'must be a byte string, not a reference' if ref $v;
    return 'must be bytes (it has characters above 255; encode it first)'
        if utf8::is_utf8($v) && $v =~ /[^\x00-\xFF]/;
    return undef;
}

sub _headers {
    my ($h) = @_;
    return 'must be an array reference of [name, value] pairs' unless ref $h eq 'ARRAY';
    for my $i (0 .. $#$h) {
        my $pair = $h->[$i];
        return "entry $i must be a [name, value] pair"
            unless ref $pair eq 'ARRAY' && @$pair == 2;
        for my $part (0, 1) {
            my $what = $part ? 'value' : 'name';
            my $v = $pair->[$part];
            return "entry $i has an undefined $what" unless defined $v;
            return "entry $i: the $what must be a byte string, not a reference" if ref $v;
            return "entry $i: the $what has characters above 255"
                if utf8::is_utf8($v) && $v =~ /[^\x00-\xFF]/;
        }
    }
    return undef;
}

1;
