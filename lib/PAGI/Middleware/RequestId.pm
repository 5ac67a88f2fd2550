package PAGI::Middleware::RequestId;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Middleware';
use Future::AsyncAwait;
use Time::HiRes ();

=head1 NAME

PAGI::Middleware::RequestId - a request id in the scope and on the response

=head1 SYNOPSIS

    enable 'RequestId';
    # in the app:
    my $id = $scope->{'middleware.request_id'};

=head1 DESCRIPTION

Gives every C<http>, C<sse> and C<websocket> scope an id, stored in the
scope copy the app gets as C<middleware.request_id>, and echoed on the
response in the same header it is read from (C<http.response.start>,
C<sse.start>, C<websocket.accept>).

The id is the request's own C<X-Request-Id> when it has one that is valid:
1 to 200 characters from C<A-Z a-z 0-9 - _ . : / + => (so nothing can be
injected into logs or headers); otherwise one is generated: 32 hex digits,
unique within the process and practically unique across processes.

=head1 OPTIONS

=over

=item header

The header to read and write; default C<x-request-id>.

=item trust_incoming

Default true. False always generates a new id (for a server facing clients
directly, where a client's id means nothing).

=item generator

A code reference returning a new id, instead of the built-in one.

=back

=cut

sub init {
    my ($self) = @_;
    $self->{header} = lc($self->{header} // 'x-request-id');
    $self->option_error(header => 'must be a header name') unless $self->{header} =~ /\A[a-z0-9!#$%&'*+.^_`|~-]+\z/;
    $self->{trust_incoming} //= 1;
    $self->option_error(generator => 'must be a code reference')
        if defined $self->{generator} && ref $self->{generator} ne 'CODE';
}

sub scope_types { ('http', 'sse', 'websocket') }

my $counter = 0;
my $seed;

=head2 generate

A new id: 32 lower-case hex digits (time, process id, a counter and
random bits).

=cut

sub generate {
    my ($self) = @_;
    return $self->{generator}->() if ref $self && $self->{generator};
    $seed //= int rand 0xFFFFFFFF;
    $counter = ($counter + 1) % 0xFFFFFFFF;
    my ($s, $us) = Time::HiRes::gettimeofday;
    return sprintf '%08x%05x%06x%05x%08x', $s & 0xFFFFFFFF, $us & 0xFFFFF, $$ & 0xFFFFFF, $counter & 0xFFFFF,
        (int(rand 0xFFFFFFFF) ^ $seed) & 0xFFFFFFFF;
}

async sub call {
    my ($self, $scope, $receive, $send, $app) = @_;
    my $id;
    if ($self->{trust_incoming}) {
        my $given = $self->header($scope->{headers}, $self->{header});
        $id = $given if defined $given && $given =~ m{\A[A-Za-z0-9\-_.:/+=]{1,200}\z};
    }
    $id //= $self->generate;
    my %start = (http => 'http.response.start', sse => 'sse.start', websocket => 'websocket.accept');
    my $start_type = $start{ $scope->{type} };
    my $id_send = async sub {
        my ($event) = @_;
        if ($event->{type} eq $start_type) {
            my $headers = $event->{headers} || [];
            $event = { %$event, headers => [ @$headers, [ $self->{header} => $id ] ] }
                unless defined $self->header($headers, $self->{header});
        }
        await $send->($event);
    };
    await $app->($self->scope_with($scope, 'middleware.request_id' => $id), $receive, $id_send);
}

=head1 SEE ALSO

L<PAGI::Middleware>, L<PAGI::Middleware::AccessLog> (which can log the id).

=cut

1;
