package PAGI::Test::Client::Response;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp qw(croak);
use Encode ();
use PAGI::Test::Client::JSON;

=head1 NAME

PAGI::Test::Client::Response - what an app answered to a PAGI::Test::Client request

=head1 SYNOPSIS

    my $res = $client->get('/users/42');
    is $res->status, 200;
    is $res->header('Content-Type'), 'application/json';
    is_deeply $res->json, { id => 42 };
    my @parts = $res->chunks;      # one entry per http.response.body event

=head1 DESCRIPTION

Built by L<PAGI::Test::Client> from the events the app sent. Also what
C<< $client->sse >> returns when the app declines the stream with
C<sse.http.response.*>, and what C<< $ws->response >> holds when a
WebSocket handshake was denied. Headers are reported exactly as the app
sent them: the test client adds no C<Date>, C<Server> or framing headers.

=head1 METHODS

=cut

sub new {
    my ($class, %args) = @_;
    return bless { headers => [], body => '', chunks => [], trailers => [], %args }, $class;
}

=head2 status

The status code.

=head2 headers

    my @pairs = $res->headers;      # ([name, value], ...)
    my $pairs = $res->headers;      # the same, as an array reference

Every header pair, in the order sent.

=head2 header

    my $type = $res->header('Content-Type');

The values of the named header (case-insensitive) joined with C<", ">,
or C<undef> when absent.

=head2 header_values

    my @cookies = $res->header_values('set-cookie');

Every value of the named header, separately (for C<Set-Cookie>).

=cut

sub status { $_[0]{status} }

sub headers { wantarray ? @{ $_[0]{headers} } : $_[0]{headers} }

sub header_values {
    my ($self, $name) = @_;
    $name = lc $name;
    return map { $_->[1] } grep { lc $_->[0] eq $name } @{ $self->{headers} };
}

sub header {
    my ($self, $name) = @_;
    my @values = $self->header_values($name);
    return @values ? join(', ', @values) : undef;
}

=head2 content_type

The media type of C<Content-Type>, lower-cased, without parameters.

=head2 content

The body as bytes (empty for C<HEAD>, as on the wire).

=head2 text

The body decoded with the C<charset> of C<Content-Type> (UTF-8 when none
is given). Croaks when the charset is unknown.

=head2 json

The body decoded as JSON. Croaks, quoting the start of the body, when it
is not JSON.

=cut

sub content_type {
    my ($self) = @_;
    my $type = $self->header('content-type') // return undef;
    return lc($type =~ s/\s*;.*\z//sr);
}

sub content { $_[0]{body} }

sub text {
    my ($self) = @_;
    my $type = $self->header('content-type') // '';
    my ($charset) = $type =~ /;\s*charset="?([\w\-:.]+)"?/i;
    $charset //= 'UTF-8';
    my $encoding = Encode::find_encoding($charset)
        or croak "response text: unknown charset '$charset' in Content-Type '$type'";
    return $encoding->decode($self->{body}, Encode::FB_DEFAULT());
}

sub json {
    my ($self) = @_;
    my $body = $self->{body};
    my $data = eval { PAGI::Test::Client::JSON->bytes->decode($body) };
    return $data unless $@;
    (my $why = $@) =~ s/ at \S+ line \d+\.?\n?\z//;
    my $start = length $body > 60 ? substr($body, 0, 60) . '...' : $body;
    croak sprintf "response json: the body is not JSON (status %s, content-type %s): %s; body: '%s'",
        $self->{status} // '?', $self->header('content-type') // 'none', $why, $start;
}

=head2 chunks

The body of each C<http.response.body> event, in order (the file's bytes
for C<file>/C<fh> bodies). In scalar context, an array reference.

=head2 trailers

The pairs of C<http.response.trailers> (an array reference, empty when
none were sent).

=cut

sub chunks { wantarray ? @{ $_[0]{chunks} } : $_[0]{chunks} }

sub trailers { $_[0]{trailers} }

=head2 is_success, is_redirect, is_error

True for 2xx; for 301, 302, 303, 307 and 308; for 4xx and 5xx.

=head2 location

The C<Location> header.

=cut

sub is_success { $_[0]{status} >= 200 && $_[0]{status} < 300 ? 1 : 0 }

sub is_redirect { ($_[0]{status} // 0) =~ /\A30[12378]\z/ ? 1 : 0 }

sub is_error { $_[0]{status} >= 400 ? 1 : 0 }

sub location { $_[0]->header('location') }

=head2 error

With C<< raise_app_errors => 0 >>: the app's exception when it died after
the response started (the response is then cut short), else C<undef>.

=cut

sub error { $_[0]{error} }

1;
