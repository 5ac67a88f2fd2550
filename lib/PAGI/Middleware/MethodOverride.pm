package PAGI::Middleware::MethodOverride;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Middleware';
use Future::AsyncAwait;

=head1 NAME

PAGI::Middleware::MethodOverride - let HTML forms send PUT, PATCH and DELETE

=head1 SYNOPSIS

    enable 'MethodOverride';
    # <form method="post" action="/items/3?_method=DELETE">

=head1 DESCRIPTION

A C<POST> request carrying an C<X-HTTP-Method-Override> header, or a
C<_method> query parameter, reaches the app with that method instead (in a
copy of the scope; the original method is kept as
C<middleware.original_method>). The header wins over the parameter. Only
the methods in C<methods> are taken (compared case-insensitively, passed
on in upper case); any other value is ignored, as is an override on a
method other than C<POST>. The query string is not changed. The body is
not read (a form's C<_method> field would need it; use the query
parameter or the header).

=head1 OPTIONS

=over

=item methods

Methods a POST may become; default C<PUT PATCH DELETE>.

=item header

The header; default C<x-http-method-override>; C<undef> to ignore headers.

=item param

The query parameter; default C<_method>; C<undef> to ignore the query.

=back

=cut

sub init {
    my ($self) = @_;
    $self->{methods} //= [qw(PUT PATCH DELETE)];
    $self->option_error(methods => 'must be an array reference') unless ref $self->{methods} eq 'ARRAY';
    $self->{method_ok} = { map { uc($_) => 1 } @{ $self->{methods} } };
    $self->{header} = 'x-http-method-override' unless exists $self->{header};
    $self->{header} = lc $self->{header} if defined $self->{header};
    $self->{param} = '_method' unless exists $self->{param};
}

async sub call {
    my ($self, $scope, $receive, $send, $app) = @_;
    return await $app->($scope, $receive, $send) unless ($scope->{method} // '') eq 'POST';
    my $wanted;
    $wanted = $self->header($scope->{headers}, $self->{header}) if defined $self->{header};
    if (!defined $wanted && defined $self->{param}) {
        for my $pair (split /[&;]/, $scope->{query_string} // '') {
            my ($name, $value) = split /=/, $pair, 2;
            next unless defined $value && _unescape($name) eq $self->{param};
            $wanted = _unescape($value);
            last;
        }
    }
    return await $app->($scope, $receive, $send) unless defined $wanted && $self->{method_ok}{ uc $wanted };
    await $app->($self->scope_with($scope, method => uc $wanted, 'middleware.original_method' => 'POST'), $receive, $send);
}

sub _unescape {
    my ($text) = @_;
    $text =~ tr/+/ /;
    $text =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge;
    return $text;
}

=head1 SEE ALSO

L<PAGI::Middleware>, L<PAGI::Middleware::Builder>.

=cut

1;
